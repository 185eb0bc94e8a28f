-- Argo CD health check for every Holdfast kind (holdfast.dev/v1alpha1: Backup, Restore,
-- Schedule, BackupStorageLocation, SLAPolicy, BackupRepository, DataUpload, DataDownload).
-- Installed by config/argocd/argocd-cm.yaml (the same script under one key per kind);
-- docs/gitops.md explains it. Lua 5.1 with only what Argo CD opens (base and table
-- libraries): no string library.
--
-- Order: a spec the operator has not seen yet is Progressing; Stalled=True is Degraded;
-- Reconciling=True is Progressing; then each kind's phase; then Ready.

local hs = {}

local function done(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function condition(st, type)
  if st.conditions == nil then
    return nil
  end
  for _, c in ipairs(st.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two is there, or `fallback`.
local function explain(reason, message, fallback)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return fallback
end

-- Phases that are good, bad, paused or still moving, per kind.
local healthy = {
  Backup = { Completed = true },
  Restore = { Completed = true },
  DataUpload = { Completed = true },
  DataDownload = { Completed = true },
  BackupStorageLocation = { Available = true },
  BackupRepository = { Ready = true },
  Schedule = { Active = true },
}
local degraded = {
  Backup = { Failed = true, PartiallyFailed = true, Cancelled = true },
  Restore = { Failed = true, PartiallyFailed = true, Cancelled = true },
  DataUpload = { Failed = true, Cancelled = true },
  DataDownload = { Failed = true, Cancelled = true },
  BackupStorageLocation = { Unavailable = true },
  BackupRepository = { Unavailable = true },
  Schedule = { Invalid = true },
}
local suspended = {
  Schedule = { Paused = true },
}

-- An SLAPolicy is configuration: it has no status and is healthy once it exists.
if obj.kind == "SLAPolicy" then
  return done("Healthy", "SLA policy")
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  return done("Progressing", "being deleted")
end

local st = obj.status
if st == nil then
  return done("Progressing", "waiting for the Holdfast operator")
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and st.observedGeneration ~= generation then
  local seen = "none"
  if st.observedGeneration ~= nil then
    seen = st.observedGeneration
  end
  return done("Progressing", "generation " .. generation .. " not observed yet (observed: " .. seen .. ")")
end

local stalled = condition(st, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  return done("Degraded", explain(stalled.reason, stalled.message, "Stalled"))
end

local reconciling = condition(st, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  return done("Progressing", explain(reconciling.reason, reconciling.message, "Reconciling"))
end

local phase = st.phase
local ready = condition(st, "Ready")
local kind = obj.kind
if phase ~= nil then
  if degraded[kind] ~= nil and degraded[kind][phase] then
    return done("Degraded", explain(st.reason or phase, st.message, phase))
  end
  if suspended[kind] ~= nil and suspended[kind][phase] then
    return done("Suspended", explain(phase, st.message, phase))
  end
  if healthy[kind] ~= nil and healthy[kind][phase] then
    if ready ~= nil and ready.status == "True" then
      return done("Healthy", explain(ready.reason, ready.message, phase))
    end
    return done("Healthy", phase)
  end
  return done("Progressing", explain(st.reason or phase, st.message, phase))
end

if ready ~= nil and ready.status == "True" then
  return done("Healthy", explain(ready.reason, ready.message, "Ready"))
end
return done("Progressing", "waiting for the Holdfast operator")
