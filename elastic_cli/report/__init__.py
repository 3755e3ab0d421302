"""`elastic report` (issue 14, in progress): the comparison of methods from what evaluate runs logged."""
