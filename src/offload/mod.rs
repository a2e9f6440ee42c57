//! Offloading: the memory planner (what stays resident under a budget) and the streamer
//! (offloaded layers read from the slow tier on every target pass, overlapped with compute).

pub mod plan;
pub mod stream;

pub use plan::{
    human, minimum_budget, parse_bytes, plan, ModelSizes, Placement, PlanBytes, PlanRequest,
    Residency,
};
pub use stream::{read_resident, StreamedLayer, Streamer};
