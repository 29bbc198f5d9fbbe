//! envd's `process.Process` and `filesystem.Filesystem` messages in proto3 JSON.
//! (Filled in with the agent.)
