//! What [`crate::engine::plan_call`] returns: the decision a session-start or session-end
//! would make now, and the steps it would run, read in a transaction that is rolled back.
//! For `autouser plan`, so that a reviewer sees a call's effect before it runs.

use autouser_policy::plan::{EndDecision, ObservedState, StartDecision, Step};
use autouser_policy::request::{EndRequest, StartRequest, Target};

/// The call to plan.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    Start(&'a StartRequest),
    End(&'a EndRequest),
}

impl Call<'_> {
    pub fn target(&self) -> &Target {
        match self {
            Call::Start(req) => &req.target,
            Call::End(req) => &req.target,
        }
    }
}

/// The decision of a call, from the state it read.
#[derive(Debug, Clone)]
pub enum PlannedCall {
    Start { state: Box<ObservedState>, decision: StartDecision },
    End { state: Box<ObservedState>, decision: EndDecision, hand_over: Option<HandOver> },
}

/// How a `best_effort_reassign_and_drop` end hands the user's objects to the inheritor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOver {
    pub inheritor: String,
    /// When it is missing, the end creates it first, in a transaction of its own
    /// ([`autouser_policy::plan::create_object_inheritor`]).
    pub inheritor_exists: bool,
    /// Each other database of the server where the user owns objects or holds privileges,
    /// with the steps run there (in a transaction of its own, before the drop).
    pub elsewhere: Vec<(String, Vec<Step>)>,
    /// The steps run in the end's own database, before the drop.
    pub here: Vec<Step>,
}
