"""The test suite: unit/ (in process, seconds), integration/ (live servers, ansible), e2e/ (whole-system scenarios)."""
