"""The discovery registry: signed provider advertisements and a registry of provisioned hosts."""
