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
//! 2. Inside the transient container, `kua-deploy self-recreate` ([`TransientArgs`]) runs the
//!    pipeline's own recreate and verify on the new image ID (`pipeline/transient.rs`); if it does
//!    not verify, the pipeline's rollback brings the previous image and commit back.
//! 3. At every start, the pipeline's completion (`pipeline/complete.rs`) ends each pending deploy
//!    `succeeded`, `rolled_back` or `failed`, with the verify object, from what [`Witness`] sees:
//!    the transient container's exit status (waited for) and what this process's own container
//!    runs. No marker: nothing to do; a second start changes nothing.
//!
//! One file a job: `discover.rs` finds the self app (this process's own container, matched to an
//! app), `handoff.rs` is step 1, `transient.rs` step 2's entry, `witness.rs` step 3's eyes.

mod discover;
mod handoff;
mod transient;
mod witness;

pub use discover::{discover, SelfTarget};
pub use handoff::{hand_off, transient_name, HANDOFF_CEILING};
pub use transient::TransientArgs;
pub use witness::Witness;
