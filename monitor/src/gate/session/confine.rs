//! The helper side of confinement (`confgate-confine`). Filled in by the confine work.
