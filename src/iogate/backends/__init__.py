"""Database and API backends; each driver is imported only in its own module."""
