//! Object storage behind a small trait: S3 (aws-sdk-s3) and a local directory.
