"""Building blocks for the test suites: real servers started on loopback, and their helpers."""
