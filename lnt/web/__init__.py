"""The HTTP side: twisted.web resources served on the daemon's C{--http} endpoint."""
