//! `onair check` tests.
