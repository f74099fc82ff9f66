//! Git sources (`ADD git@...`, git URL contexts): not fetched yet; the error says what to do instead.

use futures::future::BoxFuture;
use kiln_llb::Platform;

use super::{Loaded, Source, SourceError};

pub struct GitSource;

impl GitSource {
    fn unsupported(op: &kiln_llb::Source) -> SourceError {
        let remote = match op {
            kiln_llb::Source::Git { remote, .. } => remote.as_str(),
            _ => "",
        };
        SourceError::Unsupported(format!(
            "git sources ({remote}) are not supported yet; clone the repository into the context instead"
        ))
    }
}

impl Source for GitSource {
    fn key<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        Box::pin(async move { Err(Self::unsupported(op)) })
    }

    fn load<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        Box::pin(async move { Err(Self::unsupported(op)) })
    }
}
