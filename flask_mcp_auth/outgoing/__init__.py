"""Outgoing auth (SPEC §6): backend strategies, RFC 8693 token exchange, requests integration."""
