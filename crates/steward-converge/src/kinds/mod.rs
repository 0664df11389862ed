//! What each resource kind observes, decides and executes, one module per
//! seam; `Converger::eval` in the crate root dispatches to them.

mod accounts;
mod execute;
mod files;
mod services;
