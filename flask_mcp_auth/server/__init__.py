"""The embedded authorization server (SPEC §3): protocol modules plus the thin blueprint."""
