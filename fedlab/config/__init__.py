"""Configuration: the structured schema every composed config is checked against, and the
validated experiment built from it."""
