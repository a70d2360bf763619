-- Argo CD health check for kinfer.dev/InferenceService.
--
-- Register it in the argocd-cm ConfigMap under
--   resource.customizations.health.kinfer.dev_InferenceService
-- (docs/install.md shows how). Tested by tests/kinfer/test_argocd_health.py against status objects
-- built by the operator's own code (kinfer.status, kinfer.reconcile, kinfer.rollout).
--
-- What the operator writes (status):
--   observedGeneration                 the metadata.generation it last acted on
--   conditions[type=Ready]             True: Serving | ScaledToZero
--                                      False: Starting | NotCreated | InvalidSpec | a pod problem
--   conditions[type=Progressing]       True: Updating | ScalingUp; False: Stable
--   conditions[type=Degraded]          True: ImagePullFailed | CrashLoop | Unschedulable | ...
--   canary {phase, weight, summary, message}
--       Pending | Progressing | Paused | Promoting | Succeeded | RollingBack | Failed
--
-- Argo CD's Lua is 5.1 (gopher-lua): plain tables and string functions only.

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or ""
end

local function check(obj)
  local hs = {}
  local status = obj.status
  if status == nil or status.conditions == nil then
    hs.status = "Progressing"
    hs.message = "waiting for the kinfer operator to report status (is it running and watching this namespace?)"
    return hs
  end

  local generation = (obj.metadata or {}).generation
  if generation ~= nil and (status.observedGeneration or 0) < generation then
    hs.status = "Progressing"
    hs.message = "the operator has not acted on generation " .. tostring(generation) .. " yet"
    return hs
  end

  local ready = condition(status, "Ready")
  local progressing = condition(status, "Progressing")
  local degraded = condition(status, "Degraded")

  -- A spec the CRD let through but the operator refuses: it touches nothing until it is fixed.
  if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" then
    hs.status = "Degraded"
    hs.message = "invalid spec: " .. describe(ready)
    return hs
  end
  if degraded ~= nil and degraded.status == "True" then
    hs.status = "Degraded"
    hs.message = (degraded.reason or "Degraded") .. ": " .. describe(degraded)
    return hs
  end

  -- A canary that is not done decides the health: what Git asked for is not live yet.
  local canary = status.canary
  if canary ~= nil and canary.phase ~= nil then
    local summary = canary.summary or canary.phase
    if canary.phase == "RollingBack" or canary.phase == "Failed" then
      hs.status = "Degraded"
      hs.message = "canary rolled back: " .. (canary.message or summary)
      return hs
    end
    if canary.phase == "Paused" then
      hs.status = "Suspended"
      hs.message = "canary paused at " .. tostring(canary.weight or 0) .. "% (annotate kinfer.dev/rollout=resume to go on)"
      return hs
    end
    if canary.phase ~= "Succeeded" then
      hs.status = "Progressing"
      hs.message = "canary " .. canary.phase .. ": " .. summary
      return hs
    end
  end

  if ready == nil then
    hs.status = "Progressing"
    hs.message = "waiting for the Ready condition"
    return hs
  end
  if ready.status == "True" then
    -- Scaling up to meet load is not a rollout: the service serves, so it is Healthy.
    if progressing ~= nil and progressing.status == "True" and progressing.reason ~= "ScalingUp" then
      hs.status = "Progressing"
      hs.message = describe(progressing)
      return hs
    end
    hs.status = "Healthy"
    hs.message = describe(ready)
    return hs
  end
  if ready.reason == "NotCreated" then
    hs.status = "Missing"
    hs.message = describe(ready)
    return hs
  end
  if ready.status == "Unknown" or ready.reason == "Starting" then
    hs.status = "Progressing"
    hs.message = describe(ready)
    return hs
  end
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. describe(ready)
  return hs
end

return check(obj)
