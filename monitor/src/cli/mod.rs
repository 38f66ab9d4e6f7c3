//! Commands of the `confgate` binary.
