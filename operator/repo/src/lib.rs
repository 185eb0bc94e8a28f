//! The backup repository format (restic repository format v2): read, write, index, pack, prune, check. Talks to object storage only through holdfast-store.
