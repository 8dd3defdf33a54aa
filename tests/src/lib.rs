//! Shared helpers for the end-to-end tests: locating the built binaries, temp bundles.
