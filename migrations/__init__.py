"""peewee-migrate scripts; also installed as ``stream_state.migrations``."""
