//! The admin API's wire types, the `Admin` service trait the gateway implements, and the
//! client `telegate admin` uses; generated from `proto/telegate/admin/v1/admin.proto`.
//! Nothing here decides anything: the gateway does.

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("telegate.admin.v1");
}

pub use pb::admin_client::AdminClient;
pub use pb::admin_server::{Admin, AdminServer};
