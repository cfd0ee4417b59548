"""The reference server (``loadkit serve``): the API contract of API.md with its limits,
faults and ground truth."""
