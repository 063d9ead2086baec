"""What the domain needs of a paid music provider, and the pay-once policy over it."""
