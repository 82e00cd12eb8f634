//! The fault matrix: each promise of issue "the promise holds under faults" tried for real —
//! signals at the worst instant, a full disk, a truncated database, a second server, a flood of
//! connections, a 300 MB output line, Compose files that change between releases. Each test
//! asserts what must hold: the app serves, the deploy's phase, nothing stuck, nothing lost.
mod compose;
mod flood;
mod logs;
mod recreate;
mod storage;
