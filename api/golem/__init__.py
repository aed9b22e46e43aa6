"""Golem compatibility: the provider side of the Golem requestor CLI's protocol, on a listener of its own."""
