//! Content-addressed store: hashing, action keys, blobs, GC. Not built yet (issue: cache);
//! the engine already depends on it so the crate graph is in place.
