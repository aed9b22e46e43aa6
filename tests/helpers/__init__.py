"""What tests share besides fixtures (those are in tests/conftest.py): SSH to guests, a faulty proxy, store rows,
VISA's routes and states, real-guest steps."""
