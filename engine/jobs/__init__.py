"""Jobs: every change to the world is a persisted job executed as an ansible-runner playbook run."""
