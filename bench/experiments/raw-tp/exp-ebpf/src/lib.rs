//! Host-side placeholder so that `exp` can list this crate as a build-dependency.
#![no_std]
