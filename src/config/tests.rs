//! Unit tests of config validation.
