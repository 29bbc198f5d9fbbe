//! silo-templates: root filesystems that sandboxes start from.
//!
//! A template's rootfs is a plain directory, the read-only lower layer shared by all
//! sandboxes of the template. For now there is one template, `base`:
//! [`build_base`] debootstraps it from the host's own Debian mirror ([`mirror`]) and
//! caches it at `<templates_dir>/base/<recipe hash>/rootfs` ([`recipe`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), silo_templates::BuildError> {
//! let template = silo_templates::build_base("/var/lib/silo/templates".as_ref(), |p| {
//!     eprintln!("{p:?}")
//! })
//! .await?;
//! println!("rootfs at {}", template.rootfs.display());
//! # Ok(()) }
//! ```

mod base;
mod cache;
pub mod dockerbuild;
pub mod dockerfile;
pub mod image;
mod inroot;
pub mod layer;
pub mod mirror;
pub mod recipe;
pub mod registry;
pub mod steps;

pub use base::{build_base, prune_base, BuildError, Progress, Stage, TemplatePath};
pub use cache::{newest_build, prune_cache, remove_build_dir, touch, unused_entries};
pub use dockerbuild::{
    build_dockerfile, remove_dead_builds, BuildRunsc, Built, DockerfileBuild, Removed,
    StartCommand, StepNet, StepNetwork, TemplateConfig, Unpublished, TEMPLATE_CONFIG_FILE,
};
pub use layer::{build_layer, Layer, CODE_INTERPRETER};
