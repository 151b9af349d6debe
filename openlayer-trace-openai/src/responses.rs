//! The Responses API: [`ResponsesExt`].
