"""Retries, circuit breakers, rate limits and deadlines."""
