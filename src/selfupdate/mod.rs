//! Deploying kua-deploy itself. Recreating its own container kills the process doing it, so the
//! recreate is handed to a transient container of the new image, and the process that comes back
//! (new, or old after a rollback) writes the deploy's end:
//!
//! 1. [`hand_off`] pre-marks the deploy `self_recreate_pending` (with images, previous images and
//!    `recreate_started_at` already recorded), starts the transient container (`kua-deploy
//!    self-recreate`, engine socket and checkout mounted, Compose labels overridden so nothing
//!    takes it for a service container) and waits, at most 90 s, to be killed. Still alive after
//!    that: the deploy fails with what the transient container reported. A SIGTERM meanwhile
//!    leaves the marker as it is.
//! 2. [`run_transient`] (inside the transient container) recreates the service pinned to the new
//!    image ID and verifies it; if it does not verify, it brings the previous image back.
//! 3. [`complete_self_recreate`] runs at every start: for a pending deploy it waits for the
//!    transient container to finish, inspects its own container and ends the deploy `succeeded`,
//!    `rolled_back` or `failed`, with the verify object. No marker: nothing to do; a second start
//!    changes nothing.
//!
//! One file a job: `discover.rs` finds the self app (this process's own container, matched to an
//! app), `handoff.rs` is step 1, `transient.rs` step 2, `complete.rs` step 3.

mod complete;
mod discover;
mod handoff;
mod transient;

pub use complete::complete_self_recreate;
pub use discover::{discover, SelfTarget};
pub use handoff::{hand_off, transient_name, HANDOFF_CEILING};
pub use transient::{run_transient, TransientArgs};
