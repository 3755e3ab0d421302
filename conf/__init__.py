# Makes conf/ importable as elastic_cli.conf inside the wheel (pkg://elastic_cli.conf).
