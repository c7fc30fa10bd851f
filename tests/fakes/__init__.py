"""Test doubles: small local stand-ins for services guardrag talks to. Never used outside the tests."""
