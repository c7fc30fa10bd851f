"""guardrag guards: Presidio-based scanners for PII and secrets (and injected instructions). No MCP."""
