"""The reference server: implements the API contract (API.md) with its limits, faults and ground truth."""
