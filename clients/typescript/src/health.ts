// The standard gRPC health check (grpc.health.v1.Health/Check), which Highwater serves for "" and
// "highwater.v1.EventStoreService". Its two messages are one field each, so they are encoded here
// rather than generated from a proto file that is not part of Highwater's API.

import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

export const HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check";

/** grpc.health.v1.HealthCheckResponse.ServingStatus, by name. */
export type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

const STATUSES: readonly ServingStatus[] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/** HealthCheckRequest { string service = 1; } */
export function encodeHealthCheckRequest(service: string): Buffer {
  const writer = new BinaryWriter();
  if (service !== "") {
    writer.uint32((1 << 3) | WireType.LengthDelimited).string(service);
  }
  return Buffer.from(writer.finish());
}

/** HealthCheckResponse { ServingStatus status = 1; } */
export function decodeHealthCheckResponse(bytes: Buffer): ServingStatus {
  const reader = new BinaryReader(bytes);
  let status = 0;
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.Varint) {
      status = reader.int32();
    } else {
      reader.skip(wireType, field);
    }
  }
  return STATUSES[status] ?? "UNKNOWN";
}
