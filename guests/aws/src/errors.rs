//! EC2 error code / HTTP status -> machine code (the README's mapping table).

use mcm_wasm_sdk::Code;

/// Capacity and limit errors: MCM waits long before retrying.
const EXHAUSTED: &[&str] = &[
    "InsufficientCapacity",
    "InsufficientAddressCapacity",
    "InsufficientInstanceCapacity",
    "InsufficientVolumeCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientFreeAddressesInSubnet",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "VolumeLimitExceeded",
    "MaxIOPSLimitExceeded",
    "RouteLimitExceeded",
    "AddressLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "ResourceLimitExceeded",
    "Unsupported",
];

/// Throttling and service-side failures: MCM retries soon.
const UNAVAILABLE: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "ServerInternal",
];

/// The request was not signed acceptably.
const UNAUTHENTICATED: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "RequestExpired",
    "InvalidToken",
];

/// Signed fine, but not allowed.
const PERMISSION_DENIED: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "Blocked",
    "PendingVerification",
];

/// The request (i.e. the class) is wrong.
const INVALID_ARGUMENT: &[&str] = &[
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "UnknownParameter",
    "InvalidAction",
    "ValidationError",
    "InvalidBlockDeviceMapping",
    "InvalidInstanceType",
    "InvalidUserData.Malformed",
    "InvalidNetworkInterface.InUse",
    // IAM's "no such instance profile" (moto answers RunInstances with it).
    "NoSuchEntity",
];

pub const INSTANCE_NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// The machine code of an EC2 error answer.
pub fn code_for(aws_code: &str, status: u16) -> Code {
    let is = |list: &[&str]| list.contains(&aws_code);
    if aws_code == INSTANCE_NOT_FOUND {
        Code::NotFound
    } else if is(EXHAUSTED) {
        Code::ResourceExhausted
    } else if is(UNAVAILABLE) {
        Code::Unavailable
    } else if is(UNAUTHENTICATED) {
        Code::Unauthenticated
    } else if is(PERMISSION_DENIED) {
        Code::PermissionDenied
    } else if is(INVALID_ARGUMENT)
        || aws_code.ends_with(".Malformed")
        // A resource the class names does not exist: InvalidAMIID.NotFound,
        // InvalidSubnetID.NotFound, InvalidGroup.NotFound, InvalidKeyPair.NotFound, ...
        || (aws_code.starts_with("Invalid") && aws_code.ends_with(".NotFound"))
    {
        Code::InvalidArgument
    } else if status == 429 || status >= 500 {
        Code::Unavailable
    } else {
        Code::Internal
    }
}

/// The machine code of an HTTP answer whose body is not an EC2 error document.
pub fn code_for_status(status: u16) -> Code {
    match status {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        429 | 500..=599 => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_table() {
        assert_eq!(
            code_for("InsufficientInstanceCapacity", 500),
            Code::ResourceExhausted
        );
        assert_eq!(code_for("VcpuLimitExceeded", 400), Code::ResourceExhausted);
        assert_eq!(code_for("RequestLimitExceeded", 503), Code::Unavailable);
        assert_eq!(code_for("Throttling", 400), Code::Unavailable);
        assert_eq!(code_for("InternalError", 500), Code::Unavailable);
        assert_eq!(code_for("SomethingNew", 503), Code::Unavailable);
        assert_eq!(code_for("AuthFailure", 401), Code::Unauthenticated);
        assert_eq!(
            code_for("UnauthorizedOperation", 403),
            Code::PermissionDenied
        );
        assert_eq!(
            code_for("InvalidParameterValue", 400),
            Code::InvalidArgument
        );
        assert_eq!(
            code_for("InvalidAMIID.NotFound", 400),
            Code::InvalidArgument
        );
        assert_eq!(
            code_for("InvalidSubnetID.NotFound", 400),
            Code::InvalidArgument
        );
        assert_eq!(code_for("NoSuchEntity", 404), Code::InvalidArgument);
        assert_eq!(
            code_for("InvalidInstanceID.Malformed", 400),
            Code::InvalidArgument
        );
        assert_eq!(code_for("InvalidInstanceID.NotFound", 400), Code::NotFound);
        assert_eq!(code_for("SomethingNew", 400), Code::Internal);
        assert_eq!(code_for_status(502), Code::Unavailable);
        assert_eq!(code_for_status(404), Code::Internal);
    }
}
