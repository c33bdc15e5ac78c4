//! The states a projection version and its rebuild are stored with, as types: the text in
//! `projection_versions.status` and `.rebuild_strategy` (migration 0003) read into enums that
//! refuse a value they do not know, instead of comparing strings or guessing.

use std::{fmt, str::FromStr};

use crate::error::Error;

/// `projection_versions.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    /// Being built beside the active version (a registration or a blue/green rebuild).
    Building,
    /// The active version, emptied and replayed by an in-place rebuild.
    Rebuilding,
    /// Read through the projection's view, and applied by appends or its worker.
    Active,
    /// Stopped by an error, with `last_error`.
    Failed,
    /// Replaced by a newer version; never applied again.
    Retired,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Rebuilding => "rebuilding",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Retired => "retired",
        }
    }

    /// Whether a rebuild of the version is under way (here or on another server).
    pub fn is_rebuild(self) -> bool {
        matches!(self, Self::Building | Self::Rebuilding)
    }
}

impl fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VersionStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "building" => Ok(Self::Building),
            "rebuilding" => Ok(Self::Rebuilding),
            "active" => Ok(Self::Active),
            "failed" => Ok(Self::Failed),
            "retired" => Ok(Self::Retired),
            other => Err(Error::Internal(format!(
                "unknown projection version status {other:?}"
            ))),
        }
    }
}

/// How a rebuild builds: `projection_versions.rebuild_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The next version beside the active one, then a cut-over.
    BlueGreen,
    /// The active version emptied and replayed, appends recording skips meanwhile.
    InPlace,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlueGreen => "blue_green",
            Self::InPlace => "in_place",
        }
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "blue_green" => Ok(Self::BlueGreen),
            "in_place" => Ok(Self::InPlace),
            other => Err(Error::Internal(format!(
                "unknown rebuild strategy {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_read_back_and_unknown_ones_are_refused() {
        for status in [
            VersionStatus::Building,
            VersionStatus::Rebuilding,
            VersionStatus::Active,
            VersionStatus::Failed,
            VersionStatus::Retired,
        ] {
            assert_eq!(status.as_str().parse::<VersionStatus>().ok(), Some(status));
        }
        for strategy in [Strategy::BlueGreen, Strategy::InPlace] {
            assert_eq!(strategy.as_str().parse::<Strategy>().ok(), Some(strategy));
        }
        assert!("paused".parse::<VersionStatus>().is_err());
        assert!("in-place".parse::<Strategy>().is_err());
    }
}
