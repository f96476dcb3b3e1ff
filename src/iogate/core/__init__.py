"""Value objects shared by every component; imports nothing else of iogate."""
