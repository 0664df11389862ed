//! The fleet crate over real sockets and processes, one test binary: the
//! proxy (`proxy`, and `smuggling`, the differential framing test against
//! hyper's server and nginx) and the controller driven through both providers
//! (`controller`), and on a real OpenStack (`openstack`).

mod controller;
mod openstack;
mod proxy;
mod smuggling;
