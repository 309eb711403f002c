//! The error names of ASL and how `ErrorEquals` matches them.

/// Matches every error except `States.Runtime` and `States.DataLimitExceeded`.
pub const ALL: &str = "States.ALL";
/// Matches every error except `States.Timeout` (and the two `States.ALL` skips).
pub const TASK_FAILED: &str = "States.TaskFailed";
/// A Task ran longer than `TimeoutSeconds`, or an execution longer than its `TimeoutSeconds`.
pub const TIMEOUT: &str = "States.Timeout";
/// A Task sent no heartbeat for longer than `HeartbeatSeconds`.
pub const HEARTBEAT_TIMEOUT: &str = "States.HeartbeatTimeout";
/// An error that can never be caught or retried.
pub const RUNTIME: &str = "States.Runtime";
/// No Choice rule matched and there is no `Default`.
pub const NO_CHOICE_MATCHED: &str = "States.NoChoiceMatched";
/// An intrinsic function failed.
pub const INTRINSIC_FAILURE: &str = "States.IntrinsicFailure";
/// A `.$` field of a template could not be resolved.
pub const PARAMETER_PATH_FAILURE: &str = "States.ParameterPathFailure";
/// `ResultPath` could not be applied to the input.
pub const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";
/// A payload exceeded the size limit.
pub const DATA_LIMIT_EXCEEDED: &str = "States.DataLimitExceeded";
/// A Map state had more failed items than it tolerates.
pub const EXCEED_TOLERATED_FAILURE_THRESHOLD: &str = "States.ExceedToleratedFailureThreshold";
/// A branch or iteration failed (reported by Parallel/Map as the branch's own error).
pub const BRANCH_FAILED: &str = "States.BranchFailed";
/// The execution was stopped.
pub const ABORTED: &str = "States.Aborted";
/// Task permissions (kept for AWS compatibility).
pub const PERMISSIONS: &str = "States.Permissions";

/// True when a retrier's or catcher's `ErrorEquals` list matches `error`
/// (under the current interpreter rules, [`crate::interp::RULES`]).
pub fn matches(error_equals: &[String], error: &str) -> bool {
    matches_under(error_equals, error, crate::interp::RULES)
}

/// [`matches()`] under the interpreter rules an execution started with
/// ([`crate::interp::ExecutionInfo::rules`]). From rules 2 a heartbeat
/// timeout is a timeout, as on AWS (`States.Timeout`: "ran longer than
/// `TimeoutSeconds`, or failed to send a heartbeat for longer than
/// `HeartbeatSeconds`"): `States.Timeout` matches it and `States.TaskFailed`
/// does not. Before, only its own name and the wildcards matched it.
pub fn matches_under(error_equals: &[String], error: &str, rules: u32) -> bool {
    if error == RUNTIME {
        return false;
    }
    let timeout = error == TIMEOUT || (rules >= 2 && error == HEARTBEAT_TIMEOUT);
    error_equals.iter().any(|pattern| match pattern.as_str() {
        ALL => error != DATA_LIMIT_EXCEEDED,
        TASK_FAILED => !timeout && error != DATA_LIMIT_EXCEEDED,
        TIMEOUT => timeout,
        name => name == error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_matches_everything_but_runtime_and_data_limit() {
        assert!(matches(&v(&[ALL]), "Custom.Error"));
        assert!(matches(&v(&[ALL]), TIMEOUT));
        assert!(!matches(&v(&[ALL]), RUNTIME));
        assert!(!matches(&v(&[ALL]), DATA_LIMIT_EXCEEDED));
        assert!(matches(&v(&[DATA_LIMIT_EXCEEDED]), DATA_LIMIT_EXCEEDED));
    }

    #[test]
    fn task_failed_skips_timeout() {
        assert!(matches(&v(&[TASK_FAILED]), "Lambda.Unknown"));
        assert!(!matches(&v(&[TASK_FAILED]), TIMEOUT));
        assert!(matches(&v(&[TASK_FAILED, TIMEOUT]), TIMEOUT));
    }

    #[test]
    fn a_heartbeat_timeout_is_a_timeout_from_rules_2() {
        assert!(matches(&v(&[TIMEOUT]), HEARTBEAT_TIMEOUT));
        assert!(matches(&v(&[HEARTBEAT_TIMEOUT]), HEARTBEAT_TIMEOUT));
        assert!(!matches(&v(&[TASK_FAILED]), HEARTBEAT_TIMEOUT));
        assert!(matches(&v(&[ALL]), HEARTBEAT_TIMEOUT));
        // A task timeout is not a heartbeat timeout.
        assert!(!matches(&v(&[HEARTBEAT_TIMEOUT]), TIMEOUT));
        // Histories written before are replayed as they ran.
        assert!(!matches_under(&v(&[TIMEOUT]), HEARTBEAT_TIMEOUT, 1));
        assert!(matches_under(&v(&[TASK_FAILED]), HEARTBEAT_TIMEOUT, 1));
        assert!(matches_under(
            &v(&[HEARTBEAT_TIMEOUT]),
            HEARTBEAT_TIMEOUT,
            0
        ));
    }

    #[test]
    fn runtime_is_never_matched() {
        assert!(!matches(&v(&[RUNTIME]), RUNTIME));
    }

    #[test]
    fn exact_names() {
        assert!(matches(&v(&["A", "B"]), "B"));
        assert!(!matches(&v(&["A", "B"]), "C"));
        assert!(!matches(&v(&[]), "C"));
    }
}
