//! fanotify notification group (being written)
