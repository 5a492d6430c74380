"""Prompts as the UNet sees them: text conditioning, the tokens of a concept in a prompt, and
the templates that put a concept into prompts. Used by every job and by stack composition."""
