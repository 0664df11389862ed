//! The `steward` binary end to end, one test binary: each module drives the
//! real binary against real servers (`scripts/testbed`) for one area.

mod backup;
mod cli;
mod common;
mod converge;
mod fleet;
mod image;
mod init;
mod main_job;
mod openstack;
mod package;
