"""Test-only fixtures that ship with the package: the bad-input corpus."""
