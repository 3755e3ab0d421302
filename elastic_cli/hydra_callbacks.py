class MlflowSweepCallback:
    pass
