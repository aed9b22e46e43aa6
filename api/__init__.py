"""The operator side: jobs and their events, flavours, health and metrics; and the guests' NoCloud seed."""
