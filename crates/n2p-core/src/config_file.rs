//! Loading TOML config files with errors that name the file, line and a hint.
