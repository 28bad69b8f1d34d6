//! Session tests over loopback (filled in next).
